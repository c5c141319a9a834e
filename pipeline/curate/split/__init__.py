"""The split stage: PySceneDetect cuts, frame-accurate clip files, one row per clip (or one saying why a source gave none)."""
