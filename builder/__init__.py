"""A sandboxed remote build executor speaking the Tvix and Snix protocols."""
