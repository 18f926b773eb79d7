"""The serving catalogue: GPU types, model tiers, the PRD's 4x6x4 feasibility matrix, memory planning,
tensor-parallel choice and configuration selection. Pure data and arithmetic: no Slurm, no vLLM."""
