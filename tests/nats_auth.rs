//! Connecting to a NATS server that wants credentials: user/password and token, from the
//! `llmbus:` section of the config.

mod support;

use llmbus::{config::Config, nats};
use support::nats_server::NatsServer;

async fn connect_with(yaml: &str, url: &str) -> Result<async_nats::Client, nats::ConnectError> {
    let loaded = Config::from_yaml(yaml, "auth.yaml").unwrap();
    nats::connect(&loaded.config.llmbus, Some(url), "test").await
}

#[tokio::test]
async fn user_and_password_from_the_config_are_used() {
    let server = NatsServer::start_with(&["--user", "llm", "--pass", "s3cret-pass"]);
    let ok = connect_with(
        "llmbus:\n  nats_user: llm\n  nats_password: s3cret-pass\n",
        &server.url(),
    )
    .await;
    assert!(ok.is_ok(), "{:?}", ok.err());
    let bad = connect_with(
        "llmbus:\n  nats_user: llm\n  nats_password: wrong\n",
        &server.url(),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(bad.contains("cannot connect to NATS"), "{bad}");
    assert!(!bad.contains("wrong"), "the password is not echoed: {bad}");
}

#[tokio::test]
async fn a_token_from_the_environment_is_used() {
    let server = NatsServer::start_with(&["--auth", "tok-123456"]);
    let yaml = "llmbus:\n  nats_token: os.environ/LLMBUS_TEST_NATS_TOKEN\n";
    let loaded = Config::from_yaml_with_env(yaml, "auth.yaml", &|k| {
        (k == "LLMBUS_TEST_NATS_TOKEN").then(|| "tok-123456".to_string())
    })
    .unwrap();
    let client = nats::connect(&loaded.config.llmbus, Some(&server.url()), "test").await;
    assert!(client.is_ok(), "{:?}", client.err());
    assert!(
        connect_with("{}", &server.url()).await.is_err(),
        "no token, no entry"
    );
}
