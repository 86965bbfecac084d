"""Datasets: the embedded Darcy-flow generator (FNO recipe) and MATLAB .mat reading."""
