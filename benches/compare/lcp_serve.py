"""`python -m llama_cpp.server`, with end-of-generation tokens ignored.

`inferd bench` sends `ignore_eos: true` with every request so that each one
produces exactly the tokens it asked for. llama-cpp-python's server has no
such field (pydantic drops it silently) and stops at any end-of-generation
token, so requests could end early and be cheaper than the other servers'.
This wrapper makes its completion loop ignore EOG tokens (llama.py asks
`llama_vocab_is_eog` once per generated token and stops on True; here it is
always False), then runs the unmodified server. Every request the comparison
sends asks for ignore_eos, so a server-wide switch is the same thing.

With LCP_NO_EXTRA_BUFTS=1 (run.sh sets it on CPUs with AMX) the model is
loaded without llama.cpp's extra buffer types, as llama-server's
--no-repack does: ggml's AMX matmul segfaulted on SmolLM2's Q4_1 file on a
2-vCPU AMX Xeon (2026-12-01, in ggml_backend_amx_mul_mat), and the Llama
class has no option for it.

Usage: python lcp_serve.py [llama_cpp.server options]
"""

import os
import runpy
import sys

import llama_cpp.llama_cpp as _lib

_lib.llama_vocab_is_eog = lambda vocab, token: False

if os.environ.get("LCP_NO_EXTRA_BUFTS") == "1":
    _default_params = _lib.llama_model_default_params

    def _no_extra_bufts():
        params = _default_params()
        params.use_extra_bufts = False
        return params

    _lib.llama_model_default_params = _no_extra_bufts

if __name__ == "__main__":
    sys.argv[0] = "llama_cpp.server"
    runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)
