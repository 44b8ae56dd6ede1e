"""The published numbers our runs are compared with (ORIGINAL.md §6.4 and §7.1; WMA: draft.md, 100 episodes each)."""

CAR_TABLE1 = {
    "z": ("V only, z input (99 params)", "632 ± 251"),
    "z_hidden": ("V only, z input + 40-unit tanh hidden layer (1,443 params)", "788 ± 141"),
    "zh": ("full world model, z and h (867 params)", "906 ± 21"),
}
"""CarRacing Table 1: controller mode → (the paper's row, average over 100 random tracks)."""
CAR_OTHERS = (("DQN", "343 ± 18"), ("A3C (continuous)", "591 ± 45"), ("A3C (discrete)", "652 ± 10"))
"""Table 1's other methods, for context."""

DOOM_TAU = {
    0.10: ("2086 ± 140", "193 ± 58"),
    0.50: ("2060 ± 277", "196 ± 50"),
    1.00: ("1145 ± 690", "868 ± 511"),
    1.15: ("918 ± 546", "1092 ± 556"),
    1.30: ("732 ± 269", "753 ± 139"),
}
"""Doom τ table: τ → (score in the dream, score in the real env); the reported agent is τ = 1.15."""
DOOM_RANDOM = "210 ± 108"
"""The paper's random policy in real Doom TakeCover."""
