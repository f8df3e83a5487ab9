//! The contract cases of push devices: put / get / remove, the by-user and
//! by-topic views kept in step with the rows (a device moved to another user
//! or other topics leaves the old lists), paging, and a restart. Called by
//! [`super::run_all`]. Ids and users are unique to the run ([`super::channel`]).
//! Does not know any backend.

use std::future::Future;

use super::{DAY, channel, options};
use crate::store::{Device, Provider, SharedStore, StoreOptions};

fn device(case: &str, n: usize, user: &str, topics: &[&str]) -> Device {
    Device {
        id: channel(&format!("{case}:device:{n:03}")),
        user: user.to_owned(),
        provider: Provider::Fcm,
        token: format!("token-{n}"),
        platform: "android".into(),
        topics: topics.iter().map(|t| (*t).to_owned()).collect(),
        updated_ms: 1_700_000_000_000 + n as u64,
    }
}

fn ids(devices: &[Device]) -> Vec<&str> {
    devices.iter().map(|d| d.id.as_str()).collect()
}

/// Every device case.
pub async fn run_all<F, Fut>(open: &F)
where
    F: Fn(StoreOptions) -> Fut,
    Fut: Future<Output = SharedStore>,
{
    let store = open(options(DAY)).await;
    devices_put_get_remove(&store).await;
    devices_move_between_users_and_topics(&store).await;
    devices_paging(&store).await;
    drop(store);
    devices_survive_a_restart(open).await;
}

pub async fn devices_put_get_remove(store: &SharedStore) {
    let user = channel("dev-basic:user");
    let topic = channel("dev-basic:topic");
    let mut d = device("dev-basic", 1, &user, &[&topic]);
    d.provider = Provider::Webpush;
    d.token = r#"{"endpoint":"https://push.example/x","keys":{"p256dh":"a","auth":"b"}}"#.into();
    assert_eq!(store.device(&d.id).await.expect("device"), None);
    assert_eq!(store.put_device(&d).await.expect("put"), None);
    assert_eq!(store.device(&d.id).await.expect("device"), Some(d.clone()));
    assert_eq!(
        store.user_devices(&user, "", 10).await.expect("list"),
        vec![d.clone()]
    );
    assert_eq!(
        store.topic_devices(&topic, "", 10).await.expect("topic"),
        vec![d.clone()]
    );
    // A second put replaces the row and answers the old one.
    let mut again = d.clone();
    again.updated_ms += 5;
    again.platform = "web".into();
    assert_eq!(
        store.put_device(&again).await.expect("put"),
        Some(d.clone())
    );
    assert_eq!(
        store.user_devices(&user, "", 10).await.expect("list"),
        vec![again.clone()],
        "a re-registration is one device"
    );
    assert_eq!(
        store.remove_device(&d.id).await.expect("remove"),
        Some(again)
    );
    assert_eq!(store.remove_device(&d.id).await.expect("remove"), None);
    assert_eq!(store.device(&d.id).await.expect("device"), None);
    assert!(
        store
            .user_devices(&user, "", 10)
            .await
            .expect("list")
            .is_empty()
    );
    assert!(
        store
            .topic_devices(&topic, "", 10)
            .await
            .expect("topic")
            .is_empty()
    );
}

pub async fn devices_move_between_users_and_topics(store: &SharedStore) {
    let alice = channel("dev-move:alice");
    let bob = channel("dev-move:bob");
    let (news, sport) = (channel("dev-move:news"), channel("dev-move:sport"));
    let d = device("dev-move", 1, &alice, &[&news, &sport]);
    store.put_device(&d).await.expect("put");
    let mut moved = d.clone();
    moved.user = bob.clone();
    moved.topics = vec![sport.clone()];
    store.put_device(&moved).await.expect("put");
    assert!(
        store
            .user_devices(&alice, "", 10)
            .await
            .expect("list")
            .is_empty(),
        "the old user no longer lists the device"
    );
    assert_eq!(
        store.user_devices(&bob, "", 10).await.expect("list"),
        vec![moved.clone()]
    );
    assert!(
        store
            .topic_devices(&news, "", 10)
            .await
            .expect("topic")
            .is_empty(),
        "a topic left is no longer listed"
    );
    assert_eq!(
        store.topic_devices(&sport, "", 10).await.expect("topic"),
        vec![moved.clone()],
        "a topic kept still lists the device"
    );
    store.remove_device(&d.id).await.expect("remove");
}

pub async fn devices_paging(store: &SharedStore) {
    let user = channel("dev-page:user");
    let topic = channel("dev-page:topic");
    let all: Vec<Device> = (0..7)
        .map(|n| device("dev-page", n, &user, &[&topic]))
        .collect();
    // Stored out of order: the lists are by id.
    for d in all.iter().rev() {
        store.put_device(d).await.expect("put");
    }
    for by_topic in [false, true] {
        let mut seen = Vec::new();
        let mut after = String::new();
        loop {
            let page = if by_topic {
                store.topic_devices(&topic, &after, 3).await
            } else {
                store.user_devices(&user, &after, 3).await
            }
            .expect("page");
            assert!(page.len() <= 3);
            let Some(last) = page.last() else { break };
            after = last.id.clone();
            seen.extend(page);
        }
        assert_eq!(
            ids(&seen),
            ids(&all),
            "pages by id, none twice (topic: {by_topic})"
        );
    }
    assert!(
        store
            .user_devices(&user, "", 0)
            .await
            .expect("zero")
            .is_empty()
    );
}

pub async fn devices_survive_a_restart<F, Fut>(open: &F)
where
    F: Fn(StoreOptions) -> Fut,
    Fut: Future<Output = SharedStore>,
{
    let user = channel("dev-restart:user");
    let topic = channel("dev-restart:topic");
    let d = device("dev-restart", 1, &user, &[&topic]);
    let store = open(options(DAY)).await;
    store.put_device(&d).await.expect("put");
    drop(store);
    let store = open(options(DAY)).await;
    assert_eq!(store.device(&d.id).await.expect("device"), Some(d.clone()));
    assert_eq!(
        store.user_devices(&user, "", 10).await.expect("list"),
        vec![d]
    );
}
