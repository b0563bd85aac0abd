"""Click commands contributed by feature modules; rig.cli registers them."""
