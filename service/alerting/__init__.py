"""Alerting shared by the processes: what a message says (`messages`) and the `no_worker`
condition, which is evaluated and delivered directly by web processes and workers alike
(`direct`), so that it goes out when every worker is down."""
