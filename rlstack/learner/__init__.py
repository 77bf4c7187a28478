"""DeepSpeed learners: one Ray actor per rank, driven as a group."""
