//! Expands `#[consumer(..)]`.

use proc_macro2::{Span, TokenStream};
use quote::quote;
use syn::ItemFn;

use crate::args;

const ALLOWED: &[&str] = &[
    "topic",
    "subscription",
    "max_parallelism",
    "max_retries",
    "retry_delay",
    "dlq_topic",
    "park_topic",
    "retry",
    "subscription_type",
    "shutdown_grace",
    "handler_timeout",
    "codec",
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
    let handler_timeout = args::duration(&args, "handler_timeout")?;
    if handler_timeout == Some(0) {
        let a = args::find(&args, "handler_timeout").expect("present");
        return Err(syn::Error::new_spanned(
            &a.lit,
            "`handler_timeout` must be greater than zero",
        ));
    }
    let codec_arg = args::string(&args, "codec")?;
    let dlq = args::string(&args, "dlq_topic")?;
    if let Some((d, span)) = &dlq {
        if *d == topic {
            return Err(syn::Error::new(
                *span,
                "`dlq_topic` must differ from `topic`",
            ));
        }
    }
    let park = args::string(&args, "park_topic")?;
    if let Some((p, span)) = &park {
        if *p == topic {
            return Err(syn::Error::new(
                *span,
                "`park_topic` must differ from `topic`",
            ));
        }
    }
    let strategy = match args::string(&args, "retry")? {
        None => None,
        Some((r, span)) => Some(match r.to_ascii_lowercase().replace('-', "_").as_str() {
            "in_process" => quote!(InProcess),
            "nack" => quote!(Nack),
            "retry_topic" => quote!(Topic),
            _ => {
                return Err(syn::Error::new(
                    span,
                    format!(
                        "unknown retry strategy `{r}`; expected in_process, nack or retry_topic"
                    ),
                ))
            }
        }),
    };
    let kind = match args::string(&args, "subscription_type")? {
        None => None,
        Some((k, span)) => {
            let variant = crate::settings::subscription_type_text(&k)
                .map_err(|e| syn::Error::new(span, format!("`subscription_type`: {e}")))?;
            let variant = quote::format_ident!("{}", variant);
            Some(quote!(#variant))
        }
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
    let params = crate::handler::params(sig, "#[backstop::consumer]")?;
    let vis = &f.vis;
    let name = &sig.ident;
    let par = par.map(|n| quote!(.max_parallelism(#n)));
    let retries = max_retries.map(|n| quote!(.max_retries(#n)));
    let delay =
        retry_delay.map(|n| quote!(.retry_delay(::backstop::__private::Duration::from_nanos(#n))));
    let grace =
        grace.map(|n| quote!(.shutdown_grace(::backstop::__private::Duration::from_nanos(#n))));
    let dlq = dlq.map(|(d, _)| quote!(.dlq_topic(#d)));
    let park = park.map(|(p, _)| quote!(.park_topic(#p)));
    let strategy = strategy.map(|s| quote!(.retry_strategy(::backstop::RetryStrategy::#s)));
    let kind = kind.map(|k| quote!(.subscription_type(::backstop::broker::SubscriptionType::#k)));
    let timeout = handler_timeout
        .map(|n| quote!(.handler_timeout(::backstop::__private::Duration::from_nanos(#n))));
    let codec = crate::handler::codec(codec_arg, &params.message)?;
    let msg_ty = &params.message;
    let (state_param, state_prep, state_clone) = match &params.state {
        None => (quote!(), quote!(), quote!()),
        Some(ty) => (
            quote!(, state: impl ::core::convert::Into<::std::sync::Arc<#ty>>),
            quote!(let __state: ::std::sync::Arc<#ty> = state.into();),
            quote!(let __state = ::std::sync::Arc::clone(&__state);),
        ),
    };
    let extra_args: Vec<TokenStream> = params
        .order
        .iter()
        .map(|is_delivery| match (is_delivery, params.delivery) {
            (true, Some(true)) => quote!(&__delivery),
            (true, _) => quote!(::core::clone::Clone::clone(&__delivery)),
            (false, _) => quote!(&*__state),
        })
        .collect();
    let start_doc = if params.state.is_some() {
        "Subscribes in context `bs` and runs the handler with `state` (shared by every run) until the handle is shut down."
    } else {
        "Subscribes in context `bs` and runs the handler until the handle is shut down."
    };
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
                ::backstop::ConsumerSpec::new(#topic, #subscription) #kind #par #retries #delay #strategy #dlq #park #grace #timeout .build()
            }

            #[doc = #start_doc]
            pub async fn start(bs: &::backstop::Backstop #state_param) -> ::core::result::Result<::backstop::ConsumerHandle, ::backstop::StartError> {
                #state_prep
                bs.spawn_consumer_using(spec()?, #codec, move |__msg: #msg_ty, __delivery: ::backstop::Delivery| {
                    #state_clone
                    async move {
                        let _ = &__delivery;
                        super::#name(__msg #(, #extra_args)*).await
                    }
                }).await
            }
        }
    })
}
