"""The caption refiner: a LoRA-tuned LLM that rewrites short captions into dense ones."""
