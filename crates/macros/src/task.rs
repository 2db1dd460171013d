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
    "body_timeout",
    "key",
    "ordering_key",
    "codec",
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
    let body_timeout = args::duration(&args, "body_timeout")?;
    if body_timeout == Some(0) {
        let a = args::find(&args, "body_timeout").expect("present");
        return Err(syn::Error::new_spanned(
            &a.lit,
            "`body_timeout` must be greater than zero",
        ));
    }
    let key = args::string(&args, "key")?;
    let ordering_key = args::string(&args, "ordering_key")?;
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
    // Every parameter in order: (name, type, is_state). `&T` parameters are state: passed
    // through, not serialized into `Args`.
    let mut all: Vec<(syn::Ident, syn::Type, bool)> = Vec::new();
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
                    let is_state = matches!(&*pt.ty, syn::Type::Reference(_));
                    if let syn::Type::Reference(r) = &*pt.ty {
                        if r.mutability.is_some() {
                            return Err(syn::Error::new_spanned(
                                &pt.ty,
                                "task state is shared: take `&State`, not `&mut State`",
                            ));
                        }
                    }
                    all.push((pi.ident.clone(), (*pt.ty).clone(), is_state));
                    if !is_state {
                        names.push(pi.ident.clone());
                        types.push((*pt.ty).clone());
                    }
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
    let body_timeout = body_timeout
        .map(|n| quote!(.body_timeout(::backstop::__private::Duration::from_nanos(#n))));
    let codec = crate::handler::codec(codec_arg, &ok_ty)?;
    let key_of = |field: &(String, proc_macro2::Span)| {
        let ident = syn::Ident::new(&field.0, field.1);
        if names.iter().any(|n| *n == field.0) {
            quote!(::std::string::ToString::to_string(&__a.#ident))
        } else {
            quote!(::std::string::ToString::to_string(&__v.#ident))
        }
    };
    let key_opt = key.as_ref().map(|k| {
        let e = key_of(k);
        quote!(.key(#e))
    });
    let ordering_opt = ordering_key.as_ref().map(|k| {
        let e = key_of(k);
        quote!(.ordering_key(::std::string::String::into_bytes(#e)))
    });
    let all_params: Vec<TokenStream> = all.iter().map(|(n, t, _)| quote!(#n: #t)).collect();
    let all_names: Vec<&syn::Ident> = all.iter().map(|(n, _, _)| n).collect();
    let body_args: Vec<TokenStream> = all
        .iter()
        .map(|(n, _, is_state)| if *is_state { quote!(#n) } else { quote!(a.#n) })
        .collect();
    let doc = format!("Settings and helpers of the `{name}` task (publishes to `{topic}`).");
    Ok(quote! {
        #[doc(hidden)]
        #[allow(non_snake_case)]
        async fn #body_fn(#inputs) #output #block

        #(#attrs)*
        ///
        /// Runs in the installed context ([`Backstop::install`](::backstop::Backstop::install));
        /// without one it fails with `FailureReason::NoContext` (the arguments come back).
        #vis async fn #name(#(#all_params),*) -> ::core::result::Result<::backstop::Published<#ok_ty>, ::backstop::TaskFailure<#name::Args>> {
            match ::backstop::try_global() {
                ::core::option::Option::Some(bs) => #name::call_with(&bs, #(#all_names),*).await,
                ::core::option::Option::None => ::core::result::Result::Err(
                    ::backstop::TaskFailure::no_context(#topic, #name::Args { #(#names),* }),
                ),
            }
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
                ::backstop::TaskSpec::new(#topic) #retries #delay #dlq #timeout #body_timeout .build()
            }

            /// The task bound to `bs` (one breaker per context, shared by every call).
            pub fn task(bs: &::backstop::Backstop) -> ::core::result::Result<::backstop::Task, ::backstop::ConfigError> {
                TASKS.get_or_try_init(bs, spec)
            }

            /// Calls the task in context `bs`.
            pub async fn call_with(bs: &::backstop::Backstop, #(#all_params),*) -> ::core::result::Result<::backstop::Published<#ok_ty>, ::backstop::TaskFailure<Args>> {
                let args = Args { #(#names),* };
                let task = match task(bs) {
                    Ok(t) => t,
                    Err(e) => return Err(::backstop::TaskFailure::invalid_config(#topic, e, args)),
                };
                task.call_using(
                    args,
                    #codec,
                    |__a: &Args, __v: &#ok_ty| {
                        let _ = (__a, __v);
                        ::backstop::MessageOptions::new() #key_opt #ordering_opt
                    },
                    |a: &Args| {
                        let a = ::core::clone::Clone::clone(a);
                        super::#body_fn(#(#body_args),*)
                    },
                ).await
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
