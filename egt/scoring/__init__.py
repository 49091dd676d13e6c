"""Official scoring of the multimodal reward benchmarks, and the EGT paper's published figures."""
