"""Cloud burst: adapters (one file per kind of cloud, registered by name) and the policy that uses them."""
