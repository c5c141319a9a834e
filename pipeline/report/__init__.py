"""The report stage: one static HTML page (Jinja2 template) with thumbnails, scores, verdicts, captions, runs and plots."""
