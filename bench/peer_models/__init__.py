"""Model wrappers that run inside the peers' own virtual environments (see bench/bench_peers.py).

Each file imports only its server's package, onnxruntime and NumPy, never histoedge: the
peers are installed apart from our pins, in ``bench/.cache/peers/``.
"""
