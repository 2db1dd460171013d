//! Expands `#[task(..)]`.

use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote};
use syn::{FnArg, ItemFn, Pat, ReturnType};

use crate::args;

const ALLOWED: &[&str] = &[
    "topic",
    "max_retries",
    "retry_delay",
    "dlq_topic",
    "send_timeout",
];

pub(crate) fn expand(attr: TokenStream, item: TokenStream) -> syn::Result<TokenStream> {
    let args = args::parse(attr, ALLOWED)?;
    let f: ItemFn = syn::parse2(item)?;
    let (topic, _) = args::required_string(&args, "topic", Span::call_site())?;
    let max_retries = args::uint(&args, "max_retries", 0, 1000)?;
    let retry_delay = args::duration(&args, "retry_delay")?;
    let send_timeout = args::duration(&args, "send_timeout")?;
    if send_timeout == Some(0) {
        let a = args::find(&args, "send_timeout").expect("present");
        return Err(syn::Error::new_spanned(
            &a.lit,
            "`send_timeout` must be greater than zero",
        ));
    }
    let dlq = args::string(&args, "dlq_topic")?;
    if let Some((d, span)) = &dlq {
        if *d == topic {
            return Err(syn::Error::new(
                *span,
                "`dlq_topic` must differ from `topic`",
            ));
        }
    }
    let sig = &f.sig;
    if sig.asyncness.is_none() {
        return Err(syn::Error::new_spanned(
            sig.fn_token,
            "#[backstop::task] needs an `async fn`",
        ));
    }
    if !sig.generics.params.is_empty() {
        return Err(syn::Error::new_spanned(
            &sig.generics,
            "#[backstop::task] functions cannot be generic",
        ));
    }
    let ok_ty = match &sig.output {
        ReturnType::Type(_, ty) => ok_type(ty).ok_or_else(|| {
            syn::Error::new_spanned(
                ty,
                "#[backstop::task] functions return `Result<T, TaskError>`",
            )
        })?,
        ReturnType::Default => {
            return Err(syn::Error::new_spanned(
                sig,
                "#[backstop::task] functions return `Result<T, TaskError>`",
            ))
        }
    };
    let mut names = Vec::new();
    let mut types = Vec::new();
    for input in &sig.inputs {
        match input {
            FnArg::Receiver(r) => {
                return Err(syn::Error::new_spanned(
                    r,
                    "#[backstop::task] cannot be a method; use a free function",
                ))
            }
            FnArg::Typed(pt) => match &*pt.pat {
                Pat::Ident(pi) => {
                    names.push(pi.ident.clone());
                    types.push((*pt.ty).clone());
                }
                other => {
                    return Err(syn::Error::new_spanned(
                        other,
                        "task arguments must be plain names",
                    ))
                }
            },
        }
    }
    let vis = &f.vis;
    let name = &sig.ident;
    let body_fn = format_ident!("__backstop_task_body_{}", name);
    let attrs = &f.attrs;
    let block = &f.block;
    let output = &sig.output;
    let inputs = &sig.inputs;
    let retries = max_retries.map(|n| quote!(.max_retries(#n)));
    let delay =
        retry_delay.map(|n| quote!(.retry_delay(::backstop::__private::Duration::from_nanos(#n))));
    let timeout = send_timeout
        .map(|n| quote!(.send_timeout(::backstop::__private::Duration::from_nanos(#n))));
    let dlq = dlq.map(|(d, _)| quote!(.dlq_topic(#d)));
    let doc = format!("Settings and helpers of the `{name}` task (publishes to `{topic}`).");
    Ok(quote! {
        #[doc(hidden)]
        #[allow(non_snake_case)]
        async fn #body_fn(#inputs) #output #block

        #(#attrs)*
        #vis async fn #name(#(#names: #types),*) -> ::core::result::Result<::backstop::Published<#ok_ty>, ::backstop::TaskFailure<#name::Args>> {
            #name::call_with(&::backstop::global(), #(#names),*).await
        }

        #[doc = #doc]
        #[allow(non_snake_case, dead_code)]
        #vis mod #name {
            #[allow(unused_imports)]
            use super::*;

            /// The call's arguments, returned on failure and written to the dead-letter record.
            #[derive(Debug, Clone, ::backstop::__private::serde::Serialize)]
            #[serde(crate = "::backstop::__private::serde")]
            pub struct Args {
                #( #[allow(missing_docs)] pub #names: #types, )*
            }

            static TASKS: ::backstop::TaskCache = ::backstop::TaskCache::new();

            /// The task's validated settings.
            pub fn spec() -> ::core::result::Result<::backstop::TaskSpec, ::backstop::ConfigError> {
                ::backstop::TaskSpec::new(#topic) #retries #delay #dlq #timeout .build()
            }

            /// The task bound to `bs` (one breaker per context, shared by every call).
            pub fn task(bs: &::backstop::Backstop) -> ::core::result::Result<::backstop::Task, ::backstop::ConfigError> {
                TASKS.get_or_try_init(bs, spec)
            }

            /// Calls the task in context `bs`.
            pub async fn call_with(bs: &::backstop::Backstop, #(#names: #types),*) -> ::core::result::Result<::backstop::Published<#ok_ty>, ::backstop::TaskFailure<Args>> {
                let args = Args { #(#names),* };
                let task = match task(bs) {
                    Ok(t) => t,
                    Err(e) => return Err(::backstop::TaskFailure::invalid_config(#topic, e, args)),
                };
                task.call(args, |a: &Args| {
                    let a = ::core::clone::Clone::clone(a);
                    super::#body_fn(#(a.#names),*)
                }).await
            }
        }
    })
}

/// `T` of `Result<T, E>` (any path ending in `Result` with two generic arguments).
fn ok_type(ty: &syn::Type) -> Option<syn::Type> {
    let syn::Type::Path(p) = ty else { return None };
    let last = p.path.segments.last()?;
    if last.ident != "Result" {
        return None;
    }
    let syn::PathArguments::AngleBracketed(ab) = &last.arguments else {
        return None;
    };
    match ab.args.first()? {
        syn::GenericArgument::Type(t) => Some(t.clone()),
        _ => None,
    }
}
