//! A copy of a request kept for another attempt (retry, fallback), without copying what the
//! layers themselves put into its extensions.
//!
//! Cloning `http::Extensions` costs a map, its table and a box per value. On the success path
//! of the recommended stack a request's extensions usually hold only what this crate's layers
//! put there: the parsed chat request and the fallback's markers. A [`Spare`] keeps those as
//! plain values and puts them back into each copy it makes, so that keeping a spare costs no
//! more than the headers' clone; any other extension (the caller's) makes it clone the
//! extensions as they are, as before.

use std::sync::Arc;

use http::{Extensions, Request};

use crate::body::ReplayBody;
use crate::extensions::UsageSlot;
use crate::fallback::{FallbackAvailable, FallbackProbe};
use crate::request::ChatRequest;

/// A request kept for another attempt; each [`copy`](Self::copy) is an attempt's request.
pub(crate) struct Spare<B> {
    /// The request; its extensions are empty when `known` holds them instead.
    request: Request<B>,
    known: Option<Known>,
}

/// The extensions of a request when they are only the layers' own.
#[derive(Clone, Default)]
struct Known {
    chat: Option<Arc<ChatRequest>>,
    fallback_available: bool,
    fallback_probe: bool,
    usage: Option<UsageSlot>,
}

impl Known {
    /// What `request`'s extensions hold, if they hold nothing but the layers' own values.
    /// Never parses the body.
    fn of<B: ReplayBody>(request: &mut Request<B>) -> Option<Known> {
        let extensions = request.extensions();
        let fallback_available = extensions.get::<FallbackAvailable>().is_some();
        let fallback_probe = extensions.get::<FallbackProbe>().is_some();
        let usage = extensions.get::<UsageSlot>().cloned();
        // A parse with a model left by a layer above: `ChatRequest::of` returns it as it is.
        let parsed = ChatRequest::model_of(Some(&*request)).is_some();
        let count = usize::from(fallback_available)
            + usize::from(fallback_probe)
            + usize::from(usage.is_some())
            + usize::from(parsed);
        if count != extensions.len() {
            return None;
        }
        let chat = if parsed {
            Some(ChatRequest::of(request)?)
        } else {
            None
        };
        Some(Known {
            chat,
            fallback_available,
            fallback_probe,
            usage,
        })
    }

    fn insert_into<B>(&self, request: &mut Request<B>) {
        if let Some(chat) = &self.chat {
            ChatRequest::store(request, chat.clone());
        }
        let extensions = request.extensions_mut();
        if self.fallback_available {
            extensions.insert(FallbackAvailable);
        }
        if self.fallback_probe {
            extensions.insert(FallbackProbe);
        }
        if let Some(usage) = &self.usage {
            extensions.insert(usage.clone());
        }
    }
}

impl<B: ReplayBody> Spare<B> {
    /// A spare of `request`, if its body can be replayed.
    pub(crate) fn of(request: &mut Request<B>) -> Option<Self> {
        let body = request.body().try_clone_body()?;
        let known = Known::of(request);
        let extensions = match known {
            Some(_) => Extensions::new(),
            None => request.extensions().clone(),
        };
        Some(Spare {
            request: copy_parts(request, body, extensions),
            known,
        })
    }

    /// A request for another attempt, if the body can be replayed again.
    pub(crate) fn copy(&self) -> Option<Request<B>> {
        let body = self.request.body().try_clone_body()?;
        Some(self.copy_with_body(body))
    }
}

impl<B> Spare<B> {
    /// A request for another attempt carrying `body` instead of the original one.
    pub(crate) fn copy_with_body<T>(&self, body: T) -> Request<T> {
        let mut copy = copy_parts(&self.request, body, self.request.extensions().clone());
        if let Some(known) = &self.known {
            known.insert_into(&mut copy);
        }
        copy
    }

    /// The request itself, its extensions as they were.
    pub(crate) fn into_request(self) -> Request<B> {
        let Spare { mut request, known } = self;
        if let Some(known) = known {
            known.insert_into(&mut request);
        }
        request
    }

    /// The model of the request's parse, if a layer parsed it. For log fields.
    pub(crate) fn model(&self) -> Option<&str> {
        match &self.known {
            Some(known) => known.chat.as_deref().and_then(ChatRequest::model),
            None => ChatRequest::model_of(Some(&self.request)),
        }
    }

    /// Whether the request carries `FallbackAvailable`.
    pub(crate) fn fallback_available(&self) -> bool {
        match &self.known {
            Some(known) => known.fallback_available,
            None => self
                .request
                .extensions()
                .get::<FallbackAvailable>()
                .is_some(),
        }
    }
}

/// A request of `body` and `extensions` with the rest of `from`'s head.
pub(crate) fn copy_parts<B, T>(from: &Request<B>, body: T, extensions: Extensions) -> Request<T> {
    let mut copy = Request::new(body);
    *copy.method_mut() = from.method().clone();
    *copy.uri_mut() = from.uri().clone();
    *copy.version_mut() = from.version();
    *copy.headers_mut() = from.headers().clone();
    *copy.extensions_mut() = extensions;
    copy
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http_body_util::Full;

    fn chat_request() -> Request<Full<Bytes>> {
        Request::post("/compatible-mode/v1/chat/completions")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(
                br#"{"model":"qwen-plus","messages":[{"role":"user","content":"hi"}]}"#,
            )))
            .unwrap()
    }

    #[test]
    fn the_layers_own_extensions_come_back_in_every_copy() {
        let mut request = chat_request();
        let chat = ChatRequest::of(&mut request).unwrap();
        request.extensions_mut().insert(FallbackAvailable);
        let slot = UsageSlot::new();
        request.extensions_mut().insert(slot.clone());
        let spare = Spare::of(&mut request).unwrap();
        assert!(spare.known.is_some());
        assert!(spare.request.extensions().is_empty());
        assert_eq!(spare.model(), Some("qwen-plus"));
        assert!(spare.fallback_available());

        let mut copy = spare.copy().unwrap();
        assert_eq!(copy.extensions().len(), request.extensions().len());
        assert!(Arc::ptr_eq(&ChatRequest::of(&mut copy).unwrap(), &chat));
        assert!(copy.extensions().get::<FallbackAvailable>().is_some());
        assert!(copy.extensions().get::<FallbackProbe>().is_none());
        copy.extensions()
            .get::<UsageSlot>()
            .unwrap()
            .set(crate::Usage::new(1, 2));
        assert_eq!(slot.get(), Some(crate::Usage::new(1, 2)), "the same slot");
        assert_eq!(copy.uri(), request.uri());
        assert_eq!(copy.headers(), request.headers());
        assert_eq!(copy.method(), request.method());
    }

    #[test]
    fn any_other_extension_is_cloned_as_it_is() {
        #[derive(Clone, Debug, PartialEq)]
        struct Caller(u32);
        let mut request = chat_request();
        ChatRequest::of(&mut request).unwrap();
        request.extensions_mut().insert(Caller(7));
        request.extensions_mut().insert(FallbackProbe);
        let spare = Spare::of(&mut request).unwrap();
        assert!(spare.known.is_none());
        assert_eq!(spare.model(), Some("qwen-plus"));
        assert!(!spare.fallback_available());
        let copy = spare.copy().unwrap();
        assert_eq!(copy.extensions().get::<Caller>(), Some(&Caller(7)));
        assert!(copy.extensions().get::<FallbackProbe>().is_some());
        assert_eq!(copy.extensions().len(), 3);
    }

    #[test]
    fn a_request_with_no_extensions_is_copied_with_none() {
        let mut request = chat_request();
        let spare = Spare::of(&mut request).unwrap();
        assert!(spare.known.is_some());
        assert_eq!(spare.model(), None);
        assert!(spare.copy().unwrap().extensions().is_empty());
    }
}
