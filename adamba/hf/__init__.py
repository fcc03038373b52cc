"""Hugging Face interop: import transformers checkpoints as adamba models and export adamba
models as transformers checkpoints (adamba/hf/convert.py), one module per architecture."""
