# Sourced by setup.sh and build_llama_server.sh: the C/C++ flags every llama.cpp build of cotune
# gets (the embedded engine through pip, llama-server through cmake).
# ggml's AMX kernels crash with SIGSEGV in ggml_backend_amx_mul_mat on some AMX machines (seen
# on a Sapphire-Rapids-class VM; llama.cpp issues 20824 and PR 26954: worker threads lack the
# tile-data permission). -march=native, which ggml uses, would turn them on where the CPU lists
# AMX; explicit -mno-amx-* flags win over -march, and the AVX-512 kernels do the work instead.
LLAMA_CFLAGS=""
case "$(uname -m)" in
  x86_64|amd64) LLAMA_CFLAGS="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16" ;;
esac
