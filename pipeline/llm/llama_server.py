"""Child process: serves a GGUF chat model over llama.cpp's OpenAI-compatible HTTP server.

Started by `LlamaCppChat` through `ServerProcess`; never imported by the service itself. xllamacpp is
a prebuilt llama.cpp (AVX2/FMA/F16C, no AVX-512 or AMX code paths), so the same wheel runs on every
x86-64 CPU since 2013 and installs without a compiler. Its only extra weight buffer is llama.cpp's
CPU repacking (Q4_K and Q6_K weights interleaved for its AVX2 kernels; no AMX code is built in, whose
repacking crashed a native build on a Xeon VM): the 1.5B writes 22-27 tokens/s instead of 15-18 on
2 cores and reads prompts ~15 % faster, for ~0.6 GB more resident memory.
"""

from __future__ import annotations

import argparse
import signal
import threading

CACHE_REUSE_TOKENS = 64  # the shortest moved run of cached tokens worth reusing
# Prompt tokens read per step. The server notices a closed connection (an answer given up, a summary
# abandoned because the user spoke) between steps: 64 tokens are ~1 s on 2 cores instead of a whole
# 800-token prompt (~15 s), and read as fast (53 tokens/s against 50 with 2048; 32 is 20 % slower).
PROMPT_BATCH_TOKENS = 64


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--context-tokens", type=int, default=2048)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--gpu-layers", type=int, default=0)
    args = parser.parse_args()

    import xllamacpp

    params = xllamacpp.CommonParams()
    params.model.path = args.model
    params.n_ctx = args.context_tokens
    params.n_parallel = 1  # one answer at a time: requests queue in the server
    # Reuse cached chunks of the prompt that moved (KV shifting), not only its unchanged beginning:
    # when memory drops the oldest turns, the rest of the history is shifted, not re-read (a
    # 483-token prompt after 3 of 9 turns dropped: 56 tokens read instead of 347).
    params.n_cache_reuse = CACHE_REUSE_TOKENS
    params.n_batch = PROMPT_BATCH_TOKENS
    params.cpuparams.n_threads = args.threads
    params.cpuparams_batch.n_threads = args.threads
    params.n_gpu_layers = args.gpu_layers
    params.no_extra_bufts = False  # the CPU repacking (see above)
    params.hostnames = ["127.0.0.1"]
    params.port = args.port
    server = xllamacpp.Server(params)  # noqa: F841  (serves until this process ends)

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()


if __name__ == "__main__":
    main()
