"""The mechanisms knobs and pipelines call: Hugging Face loading, block-stack surgery, probes,
compilation, early exit, LoRA, quantisation, de-duplication, the token cache, the training loop,
quality metrics and layer pruning. Everything that imports torch, transformers, peft,
bitsandbytes or scikit-learn lives here (each library in one module)."""
