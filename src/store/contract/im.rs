//! The contract cases of the IM rows: memberships, markers, conversation
//! sets, and the head's time in `Position`. Called by [`super::run_all`]
//! (one handle, several tasks) and [`super::run_shared`] (several handles on
//! one store, several tasks each).
//!
//! Users are named like channels ([`super::channel`]), so they are unique to
//! the run too. Does not know any backend.

use std::collections::BTreeMap;
use std::future::Future;

use super::{DAY, append, channel, options, position};
use crate::store::{Conversation, Markers, SharedStore, Standing, StoreOptions};

/// Every IM case on one store (several tasks, one handle at a time).
pub async fn run_all<F, Fut>(open: &F)
where
    F: Fn(StoreOptions) -> Fut,
    Fut: Future<Output = SharedStore>,
{
    positions_and_head_time(open).await;
    let store = open(options(DAY)).await;
    markers_move_forward(&store).await;
    concurrent_advances_never_move_back(std::slice::from_ref(&store)).await;
    membership_add_remove(&store).await;
    membership_races_end_consistent(std::slice::from_ref(&store)).await;
    members_paging(&store).await;
    conversation_sets(&store).await;
    conversations_at_scale(&store).await;
    drop(store);
    im_rows_survive_a_restart(open).await;
}

/// The IM cases for several handles on one store at once.
pub async fn run_shared(handles: &[SharedStore]) {
    concurrent_advances_never_move_back(handles).await;
    membership_races_end_consistent(handles).await;
}

/// Memberships and markers survive closing and reopening the store.
pub async fn im_rows_survive_a_restart<F, Fut>(open: &F)
where
    F: Fn(StoreOptions) -> Fut,
    Fut: Future<Output = SharedStore>,
{
    let ch = channel("im-restart");
    let u = channel("im-restart:user");
    let store = open(options(DAY)).await;
    store.add_members(&ch, &[&u], 7).await.expect("add");
    store
        .advance_markers(&u, &ch, 3, 5, 8)
        .await
        .expect("advance");
    drop(store);
    let store = open(options(DAY)).await;
    assert!(store.is_member(&ch, &u).await.expect("is_member"));
    assert_eq!(
        store.markers(&u, &ch).await.expect("markers"),
        Markers {
            read: 3,
            delivered: 5
        }
    );
    assert_eq!(store.members(&ch, "", 10).await.expect("members").len(), 1);
}

fn m(read: u64, delivered: u64) -> Markers {
    Markers { read, delivered }
}

fn user(case: &str, name: &str) -> String {
    channel(&format!("{case}:user:{name}"))
}

/// The user's conversation rows by channel.
async fn rows(store: &SharedStore, user: &str) -> BTreeMap<String, Conversation> {
    store
        .conversations(user)
        .await
        .expect("conversations")
        .into_iter()
        .map(|c| (c.channel.clone(), c))
        .collect()
}

/// Every member of `channel`, paging `page` at a time.
async fn all_members(store: &SharedStore, channel: &str, page: usize) -> Vec<(String, Markers)> {
    let mut out: Vec<(String, Markers)> = Vec::new();
    loop {
        let after = out.last().map(|(u, _)| u.clone()).unwrap_or_default();
        let got = store.members(channel, &after, page).await.expect("members");
        assert!(got.len() <= page, "a page holds at most its limit");
        let done = got.len() < page;
        out.extend(got);
        if done {
            return out;
        }
    }
}

/// Markers move only forward, read implies delivered, and the answer says
/// whether they moved; a user without a row gets a `Participant` one.
pub async fn markers_move_forward(store: &SharedStore) {
    let ch = channel("markers-forward");
    let u = user("markers-forward", "u");
    assert_eq!(store.markers(&u, &ch).await.expect("markers"), m(0, 0));
    let steps = [
        // (read, delivered) given → markers after, moved
        ((0, 3), m(0, 3), true),
        ((5, 0), m(5, 5), true),
        ((3, 4), m(5, 5), false),
        ((0, 9), m(5, 9), true),
        ((7, 8), m(7, 9), true),
        ((12, 0), m(12, 12), true),
        ((12, 12), m(12, 12), false),
    ];
    for (i, ((read, delivered), after, moved)) in steps.into_iter().enumerate() {
        let got = store
            .advance_markers(&u, &ch, read, delivered, 100 + i as u64)
            .await
            .expect("advance");
        assert_eq!(got, (after, moved), "step {i}: ({read}, {delivered})");
        assert_eq!(store.markers(&u, &ch).await.expect("markers"), after);
    }
    let row = rows(store, &u).await.remove(&ch).expect("a row");
    assert_eq!(row.standing, Standing::Participant);
    assert_eq!(row.markers, m(12, 12));
    assert_eq!(row.updated_ms, 105, "updated only by the steps that moved");
    // Another user's markers in the same channel are their own.
    let other = user("markers-forward", "other");
    assert_eq!(store.markers(&other, &ch).await.expect("markers"), m(0, 0));
}

/// Concurrent advances of one user's markers in one channel, from several
/// tasks on each of `stores` (handles of one store), in scrambled order: the
/// markers end at the greatest given, each answer is at least what its call
/// gave and never below an earlier answer of the same task, and read never
/// passes delivered.
pub async fn concurrent_advances_never_move_back(stores: &[SharedStore]) {
    const TASKS: u64 = 8;
    const CALLS: u64 = 25;
    let ch = channel(&format!("markers-concurrent-{}", stores.len()));
    let u = user("markers-concurrent", &stores.len().to_string());
    let given = |t: u64, i: u64| ((i * 37 + t * 11) % 500, (i * 53 + t * 29) % 700);
    let mut tasks = Vec::new();
    for (h, store) in stores.iter().enumerate() {
        for t in 0..TASKS {
            let (store, ch, u) = (store.clone(), ch.clone(), u.clone());
            let t = t + h as u64 * TASKS;
            tasks.push(tokio::spawn(async move {
                let mut last = Markers::default();
                for i in 0..CALLS {
                    let (read, delivered) = given(t, i);
                    let (now, _) = store
                        .advance_markers(&u, &ch, read, delivered, 1000 + i)
                        .await
                        .expect("advance");
                    assert!(
                        now.read >= read && now.delivered >= delivered,
                        "task {t} call {i}: {now:?} below ({read}, {delivered})"
                    );
                    assert!(now.delivered >= now.read, "read implies delivered: {now:?}");
                    assert!(
                        now.read >= last.read && now.delivered >= last.delivered,
                        "task {t} call {i}: {now:?} moved back from {last:?}"
                    );
                    last = now;
                }
            }));
        }
    }
    for task in tasks {
        task.await.expect("advance task");
    }
    let all = (0..TASKS * stores.len() as u64).flat_map(|t| (0..CALLS).map(move |i| given(t, i)));
    let (read, delivered) = all.fold((0, 0), |(r, d), (a, b)| (r.max(a), d.max(b)));
    let expected = m(read, delivered.max(read));
    for store in stores {
        assert_eq!(store.markers(&u, &ch).await.expect("markers"), expected);
        let row = rows(store, &u).await.remove(&ch).expect("a row");
        assert_eq!(row.markers, expected);
    }
}

/// add / remove are idempotent and report what changed; a removed member's
/// row stays, `Removed`, with its markers, and a re-added member keeps them.
pub async fn membership_add_remove(store: &SharedStore) {
    let ch = channel("membership");
    let [alice, bob, carol] = ["alice", "bob", "carol"].map(|n| user("membership", n));
    let added = store
        .add_members(&ch, &[&bob, &alice, &bob], 10)
        .await
        .expect("add");
    assert_eq!(
        added,
        [bob.clone(), alice.clone()],
        "input order, once each"
    );
    assert!(
        store
            .add_members(&ch, &[&alice, &bob], 11)
            .await
            .expect("add again")
            .is_empty(),
        "already members"
    );
    for (u, member) in [(&alice, true), (&bob, true), (&carol, false)] {
        assert_eq!(store.is_member(&ch, u).await.expect("is_member"), member);
    }
    let row = rows(store, &alice).await.remove(&ch).expect("alice's row");
    assert_eq!(
        (row.standing, row.markers, row.updated_ms),
        (Standing::Member, m(0, 0), 10),
        "a second add changes nothing"
    );

    // carol only sets a marker: a participant, not a member.
    store
        .advance_markers(&carol, &ch, 2, 0, 12)
        .await
        .expect("advance");
    store
        .advance_markers(&alice, &ch, 4, 6, 13)
        .await
        .expect("advance");
    let removed = store
        .remove_members(&ch, &[&alice, &carol, &alice], 14)
        .await
        .expect("remove");
    assert_eq!(
        removed,
        std::slice::from_ref(&alice),
        "only members are removed"
    );
    assert!(
        store
            .remove_members(&ch, &[&alice], 15)
            .await
            .expect("remove again")
            .is_empty()
    );
    assert!(!store.is_member(&ch, &alice).await.expect("is_member"));
    assert_eq!(
        rows(store, &alice).await.remove(&ch),
        Some(Conversation {
            channel: ch.clone(),
            standing: Standing::Removed,
            markers: m(4, 6),
            updated_ms: 14,
        }),
        "a removed row keeps its markers"
    );
    assert_eq!(
        rows(store, &carol).await.remove(&ch),
        Some(Conversation {
            channel: ch.clone(),
            standing: Standing::Participant,
            markers: m(2, 2),
            updated_ms: 12,
        }),
        "removing a participant changes nothing"
    );
    assert_eq!(
        store.markers(&alice, &ch).await.expect("markers"),
        m(4, 6),
        "a removed member's markers stay readable"
    );
    assert_eq!(all_members(store, &ch, 10).await, [(bob.clone(), m(0, 0))]);

    // Back: a member again, markers kept; carol joins from participant.
    assert_eq!(
        store
            .add_members(&ch, &[&alice, &carol], 16)
            .await
            .expect("add back"),
        [alice.clone(), carol.clone()]
    );
    assert_eq!(
        all_members(store, &ch, 10).await,
        [
            (alice.clone(), m(4, 6)),
            (bob.clone(), m(0, 0)),
            (carol.clone(), m(2, 2))
        ]
    );
    let row = rows(store, &alice).await.remove(&ch).expect("alice's row");
    assert_eq!(
        (row.standing, row.updated_ms),
        (Standing::Member, 16),
        "{row:?}"
    );
}

/// Concurrent adds and removes of the same users, from several tasks on each
/// of `stores`: each user ends in one state that `is_member`, `members` and
/// their `conversations` row agree on; and a last, uncontended change is
/// what every view shows.
pub async fn membership_races_end_consistent(stores: &[SharedStore]) {
    const USERS: usize = 6;
    const ROUNDS: usize = 15;
    let ch = channel(&format!("membership-race-{}", stores.len()));
    let users: Vec<String> = (0..USERS)
        .map(|i| user(&format!("race-{}", stores.len()), &format!("u{i}")))
        .collect();
    let mut tasks = Vec::new();
    for (h, store) in stores.iter().enumerate() {
        for t in 0..4usize {
            let (store, ch, users) = (store.clone(), ch.clone(), users.clone());
            tasks.push(tokio::spawn(async move {
                for r in 0..ROUNDS {
                    let refs: Vec<&str> = users.iter().map(String::as_str).collect();
                    let now = 1000 + r as u64;
                    if (r + t + h) % 2 == 0 {
                        store.add_members(&ch, &refs, now).await.expect("add");
                    } else {
                        store.remove_members(&ch, &refs, now).await.expect("remove");
                    }
                }
            }));
        }
    }
    for task in tasks {
        task.await.expect("membership task");
    }
    let check = |store: SharedStore, expected: Option<bool>| {
        let (ch, users) = (ch.clone(), users.clone());
        async move {
            let listed: Vec<String> = all_members(&store, &ch, 4)
                .await
                .into_iter()
                .map(|(u, _)| u)
                .collect();
            for u in &users {
                let member = store.is_member(&ch, u).await.expect("is_member");
                let standing = rows(&store, u)
                    .await
                    .remove(&ch)
                    .map(|c| c.standing)
                    .expect("every raced user has a row");
                assert_eq!(
                    member,
                    listed.contains(u),
                    "{u}: is_member vs members {listed:?}"
                );
                assert_eq!(
                    member,
                    standing == Standing::Member,
                    "{u}: is_member vs standing {standing:?}"
                );
                assert_ne!(standing, Standing::Participant, "{u}");
                if let Some(expected) = expected {
                    assert_eq!(member, expected, "{u}");
                }
            }
        }
    };
    for store in stores {
        check(store.clone(), None).await;
    }
    let refs: Vec<&str> = users.iter().map(String::as_str).collect();
    stores[0]
        .remove_members(&ch, &refs[..3], 5000)
        .await
        .expect("remove");
    stores[stores.len() - 1]
        .add_members(&ch, &refs[3..], 5001)
        .await
        .expect("add");
    let first = refs[..3].to_vec();
    for store in stores {
        check(store.clone(), None).await;
        for u in &users {
            assert_eq!(
                store.is_member(&ch, u).await.expect("is_member"),
                !first.contains(&u.as_str()),
                "{u} after the last change"
            );
        }
    }
}

/// `members` pages: sorted by user id, strictly after `after`, at most
/// `limit`; only current members; a cursor that is not a member works.
pub async fn members_paging(store: &SharedStore) {
    let ch = channel("members-paging");
    let names: Vec<String> = (0..23).map(|i| format!("m{:02}", (i * 7) % 23)).collect();
    let users: Vec<String> = names.iter().map(|n| user("paging", n)).collect();
    let refs: Vec<&str> = users.iter().map(String::as_str).collect();
    assert_eq!(
        store.add_members(&ch, &refs, 1).await.expect("add").len(),
        users.len()
    );
    let gone = [user("paging", "m05"), user("paging", "m17")];
    store
        .remove_members(&ch, &[&gone[0], &gone[1]], 2)
        .await
        .expect("remove");
    store
        .advance_markers(&user("paging", "m03"), &ch, 8, 9, 3)
        .await
        .expect("advance");
    let mut expected: Vec<String> = users
        .iter()
        .filter(|u| !gone.contains(u))
        .cloned()
        .collect();
    expected.sort();
    for page in [1, 5, 21, 100] {
        let listed: Vec<String> = all_members(store, &ch, page)
            .await
            .into_iter()
            .map(|(u, _)| u)
            .collect();
        assert_eq!(listed, expected, "page size {page}");
    }
    let first = store.members(&ch, "", 3).await.expect("members");
    assert_eq!(
        first.iter().map(|(u, _)| u.clone()).collect::<Vec<_>>(),
        expected[..3]
    );
    assert_eq!(first[0], (user("paging", "m00"), m(0, 0)));
    let after_gone = store.members(&ch, &gone[0], 2).await.expect("members");
    assert_eq!(
        after_gone,
        [
            (user("paging", "m06"), m(0, 0)),
            (user("paging", "m07"), m(0, 0))
        ],
        "after a removed user"
    );
    let with_markers = store
        .members(&ch, &user("paging", "m02"), 1)
        .await
        .expect("members");
    assert_eq!(with_markers, [(user("paging", "m03"), m(8, 9))]);
    assert!(
        store
            .members(&ch, &expected[expected.len() - 1], 10)
            .await
            .expect("members")
            .is_empty(),
        "nothing after the last"
    );
    assert!(store.members(&ch, "", 0).await.expect("members").is_empty());
    assert!(
        store
            .members(&channel("members-none"), "", 10)
            .await
            .expect("members")
            .is_empty()
    );
}

/// `conversations` returns every row of the user (member, participant,
/// removed), and a row's `updated_ms` moves only when the row changes.
pub async fn conversation_sets(store: &SharedStore) {
    let u = user("sets", "u");
    let [member, participant, removed] =
        ["member", "participant", "removed"].map(|c| channel(&format!("sets-{c}")));
    store.add_members(&member, &[&u], 100).await.expect("add");
    store.add_members(&removed, &[&u], 101).await.expect("add");
    store
        .advance_markers(&u, &participant, 3, 0, 102)
        .await
        .expect("advance");
    store
        .advance_markers(&u, &removed, 1, 2, 103)
        .await
        .expect("advance");
    store
        .remove_members(&removed, &[&u], 104)
        .await
        .expect("remove");
    let expected = BTreeMap::from([
        (
            member.clone(),
            Conversation {
                channel: member.clone(),
                standing: Standing::Member,
                markers: m(0, 0),
                updated_ms: 100,
            },
        ),
        (
            participant.clone(),
            Conversation {
                channel: participant.clone(),
                standing: Standing::Participant,
                markers: m(3, 3),
                updated_ms: 102,
            },
        ),
        (
            removed.clone(),
            Conversation {
                channel: removed.clone(),
                standing: Standing::Removed,
                markers: m(1, 2),
                updated_ms: 104,
            },
        ),
    ]);
    assert_eq!(rows(store, &u).await, expected);

    // Calls that change nothing leave updated_ms as it is.
    store
        .add_members(&member, &[&u], 200)
        .await
        .expect("add again");
    store
        .remove_members(&participant, &[&u], 201)
        .await
        .expect("remove a participant");
    store
        .remove_members(&removed, &[&u], 202)
        .await
        .expect("remove again");
    assert_eq!(
        store
            .advance_markers(&u, &participant, 2, 3, 203)
            .await
            .expect("advance behind"),
        (m(3, 3), false)
    );
    assert_eq!(rows(store, &u).await, expected, "nothing changed");

    // A marker that moves does.
    assert_eq!(
        store
            .advance_markers(&u, &member, 0, 4, 300)
            .await
            .expect("advance"),
        (m(0, 4), true)
    );
    let row = rows(store, &u).await.remove(&member).expect("row");
    assert_eq!((row.markers, row.updated_ms), (m(0, 4), 300));
    assert!(
        store
            .conversations(&user("sets", "nobody"))
            .await
            .expect("conversations")
            .is_empty()
    );
}

/// Rows in the conversation set of the scale case: what the spec asks a
/// user's set to handle.
pub const SCALE_ROWS: u64 = 10_000;

/// A user with [`SCALE_ROWS`] conversations (markers set from 64 tasks at
/// once): `conversations` returns every row with its markers. Prints how
/// long the call took (`cargo test -- --nocapture` shows it).
pub async fn conversations_at_scale(store: &SharedStore) {
    const TASKS: u64 = 64;
    let u = user("scale", "u");
    let started = std::time::Instant::now();
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let (store, u) = (store.clone(), u.clone());
            tokio::spawn(async move {
                for i in (t..SCALE_ROWS).step_by(TASKS as usize) {
                    let ch = channel(&format!("scale-{i:05}"));
                    store
                        .advance_markers(&u, &ch, i % 7, i % 11, 1 + i)
                        .await
                        .expect("advance");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("advance task");
    }
    let written = started.elapsed();
    let started = std::time::Instant::now();
    let all = store.conversations(&u).await.expect("conversations");
    let read = started.elapsed();
    eprintln!(
        "contract: {SCALE_ROWS} marker advances from {TASKS} tasks in {written:?}; \
         conversations() of {SCALE_ROWS} rows in {read:?}"
    );
    assert_eq!(all.len() as u64, SCALE_ROWS);
    let by_channel: BTreeMap<&str, &Conversation> =
        all.iter().map(|c| (c.channel.as_str(), c)).collect();
    for i in (0..SCALE_ROWS).step_by(97) {
        let ch = channel(&format!("scale-{i:05}"));
        let row = by_channel.get(ch.as_str()).expect("every channel listed");
        let read = i % 7;
        assert_eq!(row.markers, m(read, (i % 11).max(read)), "{ch}");
        assert_eq!(row.standing, Standing::Participant, "{ch}");
    }
}

/// `positions` answers in the order asked, with each head's `time_ms`
/// (0 for an empty channel), after appends.
pub async fn positions_and_head_time<F, Fut>(open: &F)
where
    F: Fn(StoreOptions) -> Fut,
    Fut: Future<Output = SharedStore>,
{
    let store = open(options(DAY)).await;
    let (a, b, empty) = (
        channel("positions-a"),
        channel("positions-b"),
        channel("positions-empty"),
    );
    store
        .append(&[append(&a, "ea", 1..=3), append(&b, "eb", 1..=1)])
        .await
        .expect("append");
    store
        .append(&[append(&a, "ea", 4..=7)])
        .await
        .expect("append");
    let got = store
        .positions(&[&b, &empty, &a, &b])
        .await
        .expect("positions");
    let empty_epoch = store.position(&empty).await.expect("position").epoch;
    assert_eq!(
        got,
        [
            position(1, "eb"),
            position(0, &empty_epoch),
            position(7, "ea"),
            position(1, "eb")
        ]
    );
    assert_eq!(got[2].time_ms, super::PUBLICATION_TIME_MS + 7);
    assert_eq!(got[1].time_ms, 0);
    assert!(store.positions(&[]).await.expect("positions").is_empty());
    assert_eq!(
        store.position(&a).await.expect("position"),
        position(7, "ea")
    );
}
