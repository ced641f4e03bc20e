"""aibrix-runtime: Ray head/worker bootstrap and `vllm serve` supervision for multi-node serving.

    aibrix-runtime head   [options] [-- vLLM options]   wait for the model and the cluster, then serve
    aibrix-runtime worker [options]                     wait for the model and the head, then join

Modules: `config` (settings; the only reader of the environment), `commands` (pure command-line builders),
`cluster` (membership from the Ray dashboard), `supervise` (processes and signals), `run` (the lifecycles),
`errors` (the error tree and exit codes), `cli` (main).
"""

__all__: list[str] = []
