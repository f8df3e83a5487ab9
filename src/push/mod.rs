//! Offline push notifications: the device registry's rules (`registry`)
//! and one sender per provider behind the `sender::Sender` trait (`fcm`,
//! `apns`, `webpush`, sharing the HTTPS clients of `http`).
//!
//! Owns what a device registration must look like, how a device id is
//! derived, the bound on devices per user, and each provider's wire format
//! and credentials. The rows are the store's (`store::device`); the API
//! methods and client RPCs that reach them are the server API's and the
//! edge session's, through sync.
//!
//! Knows nothing of sessions, HTTP routes or NATS subjects.

pub mod apns;
pub mod fcm;
pub mod http;
pub mod queue;
pub mod registry;
pub mod sender;
pub mod unread;
pub mod webpush;

use std::sync::Arc;

use crate::config::PushConfig;

/// The queue's settings from the config; `replicas` of the stream.
pub fn queue_settings(config: &PushConfig, replicas: usize) -> queue::QueueSettings {
    queue::QueueSettings {
        rate_per_provider: config.rate_per_provider,
        max_age: config.retry_max_age,
        backoff: config.retry_backoff,
        max_backoff: config.retry_max_backoff,
        max_messages: config.queue_max_messages,
        concurrency: config.concurrency,
        replicas,
        ack_wait: (config.timeout * 3).max(std::time::Duration::from_secs(5)),
    }
}

/// The senders of the providers with credentials; an error names the
/// credential that cannot be used (the process does not start).
pub fn senders(config: &PushConfig) -> Result<Vec<Arc<dyn sender::Sender>>, String> {
    let mut out: Vec<Arc<dyn sender::Sender>> = Vec::new();
    let any = config.fcm_credentials_file.is_some()
        || config.apns_key_file.is_some()
        || config.webpush_vapid_key_file.is_some();
    if !any {
        return Ok(out);
    }
    let client =
        http::Http::new(config.ca_file.as_deref(), config.timeout).map_err(|e| e.to_string())?;
    if let Some(file) = &config.fcm_credentials_file {
        let s = fcm::FcmSender::new(
            client.clone(),
            file,
            &config.fcm_endpoint,
            config.fcm_token_url.as_deref(),
        )
        .map_err(|e| e.to_string())?;
        out.push(Arc::new(s));
    }
    if let Some(file) = &config.apns_key_file {
        let s = apns::ApnsSender::new(
            client.clone(),
            file,
            &config.apns_key_id,
            &config.apns_team_id,
            &config.apns_topic,
            &config.apns_endpoint,
        )
        .map_err(|e| e.to_string())?;
        out.push(Arc::new(s));
    }
    if let Some(file) = &config.webpush_vapid_key_file {
        let s = webpush::WebpushSender::new(
            client,
            file,
            &config.webpush_vapid_subject,
            config.webpush_endpoints.clone(),
        )
        .map_err(|e| e.to_string())?;
        out.push(Arc::new(s));
    }
    Ok(out)
}
