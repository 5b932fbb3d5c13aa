"""The project-local pull step that 048's prefect.yaml names (`retrieve_secrets.main`): the original
reads a token from a secret store; this one hands back a fixed token (the local git server needs none)."""


def main() -> dict[str, str]:
    return {"access_token": "corpus-e2e-secret-bitbucket-token"}
