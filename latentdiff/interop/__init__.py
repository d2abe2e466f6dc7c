"""Other libraries' checkpoint layouts in and out of latentdiff's (DESIGN.md section 2): so far diffusers'
transformer denoisers (``diffusers_transformers``)."""
