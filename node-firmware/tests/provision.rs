//! Pairing invitations as a person types them or a QR code carries them.
#![allow(clippy::unwrap_used)]

use node_firmware::{ProvisionError, parse_invitation};
use proptest::prelude::*;
use transport_embedded::Invitation;

const FP: &str = "66013d8aa7bdb92c396aea02853ffa3f8744bd9adc244407555b93a62c239415";

#[test]
fn a_code_with_the_daemon_s_address() {
    match parse_invitation("  9524-0317-5072@10.42.0.1:4433\n").unwrap() {
        Invitation::Code { daemon, .. } => assert_eq!(daemon, "10.42.0.1:4433"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_uri_from_a_qr_code() {
    let uri = format!("tern://pair?v=1&addr=10.42.0.1:4433&code=9524-0317-5072&fp={FP}");
    assert!(
        matches!(parse_invitation(&uri).unwrap(), Invitation::Uri(u) if u.addr == "10.42.0.1:4433")
    );
}

#[test]
fn what_cannot_be_an_invitation_says_why() {
    assert_eq!(
        parse_invitation("9524-0317-5072").unwrap_err(),
        ProvisionError::NoAddress
    );
    assert_eq!(
        parse_invitation("9524-0317-5072@host").unwrap_err(),
        ProvisionError::NoAddress
    );
    assert!(matches!(
        parse_invitation("12@10.42.0.1:4433").unwrap_err(),
        ProvisionError::Code(_)
    ));
    assert!(matches!(
        parse_invitation("tern://pair?v=1&addr=x:1").unwrap_err(),
        ProvisionError::Code(_)
    ));
    assert!(!ProvisionError::NoAddress.to_string().is_empty());
}

proptest! {
    #[test]
    fn any_text_is_an_invitation_or_a_typed_error(text in ".{0,200}") {
        let _ = parse_invitation(&text);
    }
}
