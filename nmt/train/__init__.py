"""Training (paper 3.2 and Table 2): the config, the two stages, the schedule, the frozen encoder's
output cache, data-parallel runs, and dev loss / perplexity.
"""
