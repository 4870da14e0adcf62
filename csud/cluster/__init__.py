"""Several csud nodes as one recorder: membership and camera ownership on etcd, the node API,
cluster-wide queries. Absent ``[cluster]`` in the configuration, nothing here is used."""
