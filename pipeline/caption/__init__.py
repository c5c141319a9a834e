"""Caption stage: VLM captions for kept clips and photos, resumable, with provenance and human edits."""
