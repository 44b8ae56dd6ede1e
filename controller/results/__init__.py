"""Results: the report against the paper (stage 7), the τ table, replicates across seeds, and the
paper's published numbers they are compared with."""
