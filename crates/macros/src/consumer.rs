//! Expands `#[consumer(..)]`.

use proc_macro2::{Span, TokenStream};
use quote::quote;
use syn::{FnArg, ItemFn};

use crate::args;

const ALLOWED: &[&str] = &[
    "topic",
    "subscription",
    "max_parallelism",
    "max_retries",
    "retry_delay",
    "dlq_topic",
    "subscription_type",
    "shutdown_grace",
];

pub(crate) fn expand(attr: TokenStream, item: TokenStream) -> syn::Result<TokenStream> {
    let args = args::parse(attr, ALLOWED)?;
    let f: ItemFn = syn::parse2(item)?;
    let (topic, _) = args::required_string(&args, "topic", Span::call_site())?;
    let (subscription, _) = args::required_string(&args, "subscription", Span::call_site())?;
    let par = args::uint(&args, "max_parallelism", 1, 10_000)?;
    let max_retries = args::uint(&args, "max_retries", 0, 1000)?;
    let retry_delay = args::duration(&args, "retry_delay")?;
    let grace = args::duration(&args, "shutdown_grace")?;
    let dlq = args::string(&args, "dlq_topic")?;
    if let Some((d, span)) = &dlq {
        if *d == topic {
            return Err(syn::Error::new(
                *span,
                "`dlq_topic` must differ from `topic`",
            ));
        }
    }
    let kind = match args::string(&args, "subscription_type")? {
        None => None,
        Some((k, span)) => Some(match k.to_ascii_lowercase().replace(['-', '_'], "").as_str() {
            "shared" => quote!(Shared),
            "exclusive" => quote!(Exclusive),
            "failover" => quote!(Failover),
            "keyshared" => quote!(KeyShared),
            _ => {
                return Err(syn::Error::new(
                    span,
                    format!("unknown subscription_type `{k}`; expected shared, exclusive, failover or key_shared"),
                ))
            }
        }),
    };
    let sig = &f.sig;
    if sig.asyncness.is_none() {
        return Err(syn::Error::new_spanned(
            sig.fn_token,
            "#[backstop::consumer] needs an `async fn`",
        ));
    }
    if !sig.generics.params.is_empty() {
        return Err(syn::Error::new_spanned(
            &sig.generics,
            "#[backstop::consumer] functions cannot be generic",
        ));
    }
    if sig.inputs.len() != 1 {
        return Err(syn::Error::new_spanned(
            &sig.inputs,
            "#[backstop::consumer] functions take exactly one argument: the decoded message",
        ));
    }
    if let Some(FnArg::Receiver(r)) = sig.inputs.first() {
        return Err(syn::Error::new_spanned(
            r,
            "#[backstop::consumer] cannot be a method; use a free function",
        ));
    }
    let vis = &f.vis;
    let name = &sig.ident;
    let par = par.map(|n| quote!(.max_parallelism(#n)));
    let retries = max_retries.map(|n| quote!(.max_retries(#n)));
    let delay =
        retry_delay.map(|n| quote!(.retry_delay(::backstop::__private::Duration::from_nanos(#n))));
    let grace =
        grace.map(|n| quote!(.shutdown_grace(::backstop::__private::Duration::from_nanos(#n))));
    let dlq = dlq.map(|(d, _)| quote!(.dlq_topic(#d)));
    let kind = kind.map(|k| quote!(.subscription_type(::backstop::broker::SubscriptionType::#k)));
    let doc =
        format!("Settings and start-up of the `{name}` consumer (`{topic}` / `{subscription}`).");
    Ok(quote! {
        #f

        #[doc = #doc]
        #[allow(non_snake_case, dead_code)]
        #vis mod #name {
            #[allow(unused_imports)]
            use super::*;

            /// The consumer's validated settings.
            pub fn spec() -> ::core::result::Result<::backstop::ConsumerSpec, ::backstop::ConfigError> {
                ::backstop::ConsumerSpec::new(#topic, #subscription) #kind #par #retries #delay #dlq #grace .build()
            }

            /// Subscribes in context `bs` and runs the handler until the handle is shut down.
            pub async fn start(bs: &::backstop::Backstop) -> ::core::result::Result<::backstop::ConsumerHandle, ::backstop::StartError> {
                bs.spawn_consumer(spec()?, super::#name).await
            }
        }
    })
}
