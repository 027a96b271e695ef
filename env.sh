# Source this before installing: `source env.sh && pip install -e .`
#
# llama-cpp-python compiles llama.cpp on install. Build it portable (AVX2, no -march=native): on hosts
# with AMX (Sapphire Rapids) the native build repacks Q4_K weights for AMX and segfaults on any prompt
# longer than one token (ggml-org/llama.cpp#20824). LLAVA_BUILD=OFF skips the unused multimodal part.
export CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DLLAVA_BUILD=OFF"
# OpenMP's default spin-wait makes 2 threads 5-40x slower when anything else uses a core.
export OMP_WAIT_POLICY=PASSIVE
