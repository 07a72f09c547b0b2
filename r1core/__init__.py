"""r1core: the R1 recipe as plain functions."""
