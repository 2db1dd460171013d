//! What the consumer macro reads from a handler's signature: the message type, whether it takes
//! its `Delivery` (by value or by reference), and the type of its state argument; and the codec.

use proc_macro2::{Span, TokenStream};
use quote::quote;
use syn::{FnArg, Signature, Type};

/// A handler's parameters after the message.
pub(crate) struct Params {
    /// The message type.
    pub(crate) message: Type,
    /// `Some(true)` for `&Delivery`, `Some(false)` for `Delivery`.
    pub(crate) delivery: Option<bool>,
    /// `S` of a `state: &S` argument.
    pub(crate) state: Option<Type>,
    /// The arguments after the message in signature order: `true` for the delivery.
    pub(crate) order: Vec<bool>,
}

fn is_delivery(ty: &Type) -> bool {
    match ty {
        Type::Path(p) => p
            .path
            .segments
            .last()
            .is_some_and(|s| s.ident == "Delivery"),
        _ => false,
    }
}

/// Reads `(message: M [, delivery: Delivery | &Delivery] [, state: &S])`, in any order after
/// the message.
pub(crate) fn params(sig: &Signature, what: &str) -> syn::Result<Params> {
    let usage = format!(
        "{what} functions take the decoded message, then optionally `delivery: &Delivery` and/or `state: &YourState`"
    );
    let mut typed = Vec::new();
    for input in &sig.inputs {
        match input {
            FnArg::Receiver(r) => {
                return Err(syn::Error::new_spanned(
                    r,
                    format!("{what} cannot be a method; use a free function"),
                ))
            }
            FnArg::Typed(pt) => typed.push(pt),
        }
    }
    let Some((first, rest)) = typed.split_first() else {
        return Err(syn::Error::new_spanned(&sig.inputs, usage).with_call_site(sig));
    };
    if rest.len() > 2 {
        return Err(syn::Error::new_spanned(&sig.inputs, usage));
    }
    if is_delivery(&first.ty) || matches!(&*first.ty, Type::Reference(_)) {
        return Err(syn::Error::new_spanned(
            &first.ty,
            format!("{what}: the first argument is the decoded message (an owned type)"),
        ));
    }
    let mut out = Params {
        message: (*first.ty).clone(),
        delivery: None,
        state: None,
        order: Vec::new(),
    };
    for pt in rest {
        let (by_ref, inner) = match &*pt.ty {
            Type::Reference(r) => {
                if r.mutability.is_some() {
                    return Err(syn::Error::new_spanned(
                        &pt.ty,
                        format!("{what}: state is shared by concurrent runs: take `&State`, not `&mut State`"),
                    ));
                }
                (true, (*r.elem).clone())
            }
            other => (false, other.clone()),
        };
        if is_delivery(&inner) {
            if out.delivery.is_some() {
                return Err(syn::Error::new_spanned(
                    &pt.ty,
                    format!("{what}: `Delivery` given twice"),
                ));
            }
            out.delivery = Some(by_ref);
            out.order.push(true);
        } else if by_ref {
            if out.state.is_some() {
                return Err(syn::Error::new_spanned(
                    &pt.ty,
                    format!("{what}: only one state argument; put what you need in one struct"),
                ));
            }
            out.state = Some(inner);
            out.order.push(false);
        } else {
            return Err(syn::Error::new_spanned(&pt.ty, usage));
        }
    }
    Ok(out)
}

trait WithCallSite {
    fn with_call_site(self, sig: &Signature) -> Self;
}
impl WithCallSite for syn::Error {
    fn with_call_site(self, sig: &Signature) -> Self {
        if sig.inputs.is_empty() {
            syn::Error::new_spanned(&sig.ident, self.to_string())
        } else {
            self
        }
    }
}

/// The codec expression: the `codec = ".."` argument, or by type (`Vec<u8>`/`Bytes` raw,
/// `String` text, anything else JSON).
pub(crate) fn codec(arg: Option<(String, Span)>, ty: &Type) -> syn::Result<TokenStream> {
    if let Some((name, span)) = arg {
        return match name.to_ascii_lowercase().as_str() {
            "json" => Ok(quote!(::backstop::Json)),
            "raw" | "bytes" => Ok(quote!(::backstop::Raw)),
            "text" | "string" => Ok(quote!(::backstop::Text)),
            "protobuf" | "proto" | "prost" => Ok(quote!(::backstop::Protobuf)),
            _ => Err(syn::Error::new(
                span,
                format!("unknown codec `{name}`; expected json, bytes, string or protobuf"),
            )),
        };
    }
    let text = quote!(#ty).to_string().replace(' ', "");
    let last = match ty {
        Type::Path(p) => p.path.segments.last().map(|s| s.ident.to_string()),
        _ => None,
    };
    Ok(
        if text.ends_with("Vec<u8>") || last.as_deref() == Some("Bytes") {
            quote!(::backstop::Raw)
        } else if last.as_deref() == Some("String") {
            quote!(::backstop::Text)
        } else {
            quote!(::backstop::Json)
        },
    )
}
