"""The worker service: RQ workers that run reasoning trees against the SQL store."""
