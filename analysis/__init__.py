"""The subcommands of analyze.py, one module each: view (Fig. 2 and 7), tokens (Fig. 3, Table 11b),
intervene (Table 1, appendix E.1) and formats (Table 11a); what they share is in common.py."""
