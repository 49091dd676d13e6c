"""Core algorithms of EGT: entropy probing, curation, reward, advantages and losses."""
