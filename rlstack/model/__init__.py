"""The model: the character tokenizer and the HF architectures every stage trains."""
