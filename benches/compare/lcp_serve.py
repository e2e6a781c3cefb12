"""`python -m llama_cpp.server`, with end-of-generation tokens ignored.

`inferd bench` sends `ignore_eos: true` with every request so that each one
produces exactly the tokens it asked for. llama-cpp-python's server has no
such field (pydantic drops it silently) and stops at any end-of-generation
token, so requests could end early and be cheaper than the other servers'.
This wrapper makes its completion loop ignore EOG tokens (llama.py asks
`llama_vocab_is_eog` once per generated token and stops on True; here it is
always False), then runs the unmodified server. Every request the comparison
sends asks for ignore_eos, so a server-wide switch is the same thing.

Usage: python lcp_serve.py [llama_cpp.server options]
"""

import runpy
import sys

import llama_cpp.llama_cpp as _lib

_lib.llama_vocab_is_eog = lambda vocab, token: False

if __name__ == "__main__":
    sys.argv[0] = "llama_cpp.server"
    runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)
