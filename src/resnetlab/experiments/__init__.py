"""The studies: the classic experiments and the studies of trained nets, each writing a run
folder that `resnetlab.reports` renders."""
