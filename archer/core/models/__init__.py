"""Policy models and tokenizers: the offline tiny kit and local Hugging Face folders."""
