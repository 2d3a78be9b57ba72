"""LinkerLLM runtime: co-resident variants whose shareable blocks alias the donor's storage (paper §4)."""
