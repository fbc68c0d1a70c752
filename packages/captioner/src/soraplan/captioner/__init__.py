"""soraplan captioner: VLM captioning of curated clips and the LoRA caption refiner."""
