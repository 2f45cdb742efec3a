"""forkdev: the development loop of an inference-engine fork (vLLM, SGLang, MLC-LLM) as invoke tasks."""

__version__ = "0.1.0"
