"""The transport to a Slurm cluster (opeva_spool/runtimes/slurm_cluster.py) against a real one-node cluster."""


def test_the_cluster_fixture_gives_an_idle_node_past_its_first_scheduling_pass(slurm_cluster):
    assert slurm_cluster.run("sinfo", "-h", "-o", "%T").stdout.strip() == "idle"
    jobs = slurm_cluster.run("squeue", "-h", "-t", "all", "-o", "%j|%T").stdout.split()
    assert "warm-up|COMPLETED" in jobs
