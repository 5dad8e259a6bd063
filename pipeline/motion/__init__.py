"""Paper 3.2 Motion Reconstruction (Eq. 1-5): the quadruple data, losses and training of E_e, E_m, D_em, the
decomposition of every corpus frame into f_e / f_m (`decompose`), its report and the Table 2 ablation rows.

Stages: train_motion, decompose, motion_report (and table2, which trains the rows).
"""
