//! AWS credentials and Signature Version 4, with the AWS crates (`aws-sigv4`,
//! `aws-credential-types`): nothing here computes a signature by hand.
//!
//! [`AwsAuth`] is how one deployment proves who it is: SigV4 with access keys (service
//! `bedrock`), or a Bedrock API key sent as `Authorization: Bearer`.

use std::{fmt, time::SystemTime};

use aws_credential_types::Credentials;
use aws_sigv4::{
    http_request::{SignableBody, SignableRequest, SigningSettings, sign},
    sign::v4,
};
use aws_smithy_runtime_api::client::identity::Identity;

use crate::{
    config::Secret,
    providers::{ErrorClass, ProviderError},
};

/// The SigV4 service name of Bedrock Runtime (`signingName` in its service model).
pub const SERVICE: &str = "bedrock";

/// AWS access keys.
#[derive(Clone)]
pub struct AwsKeys {
    /// `AWS_ACCESS_KEY_ID`.
    pub access_key_id: Secret,
    /// `AWS_SECRET_ACCESS_KEY`.
    pub secret_access_key: Secret,
    /// `AWS_SESSION_TOKEN`, for temporary credentials.
    pub session_token: Option<Secret>,
}

/// How a deployment authenticates.
#[derive(Clone)]
pub enum AwsAuth {
    /// SigV4 with access keys.
    Keys(AwsKeys),
    /// A Bedrock API key (`AWS_BEARER_TOKEN_BEDROCK`), sent as a bearer token.
    Bearer(Secret),
    /// Nothing configured: every call fails with an authentication error.
    Missing,
}

impl fmt::Debug for AwsAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AwsAuth::Keys(k) if k.session_token.is_some() => "Keys(***, session token)",
            AwsAuth::Keys(_) => "Keys(***)",
            AwsAuth::Bearer(_) => "Bearer(***)",
            AwsAuth::Missing => "Missing",
        })
    }
}

impl AwsAuth {
    /// Every secret value, for scrubbing error messages.
    pub fn secrets(&self) -> Vec<&str> {
        match self {
            AwsAuth::Keys(k) => {
                let mut out = vec![k.access_key_id.expose(), k.secret_access_key.expose()];
                out.extend(k.session_token.as_ref().map(Secret::expose));
                out
            }
            AwsAuth::Bearer(token) => vec![token.expose()],
            AwsAuth::Missing => Vec::new(),
        }
    }

    /// The headers that authenticate a request: SigV4's `authorization`, `x-amz-date` (and
    /// `x-amz-security-token`), or `authorization: Bearer`. `headers` are the request's other
    /// headers, which SigV4 signs too.
    pub fn headers(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        region: &str,
        time: SystemTime,
    ) -> Result<Vec<(String, String)>, ProviderError> {
        match self {
            AwsAuth::Keys(keys) => sigv4_headers(
                keys,
                &SignRequest {
                    method,
                    url,
                    headers,
                    body,
                },
                region,
                SERVICE,
                time,
            ),
            AwsAuth::Bearer(token) => Ok(vec![(
                "authorization".into(),
                format!("Bearer {}", token.expose()),
            )]),
            AwsAuth::Missing => Err(ProviderError::new(
                ErrorClass::Authentication,
                "no AWS credentials: set aws_access_key_id and aws_secret_access_key (or \
                 AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_BEARER_TOKEN_BEDROCK)",
            )),
        }
    }
}

/// The parts of an HTTP request that SigV4 signs.
#[derive(Debug, Clone, Copy)]
pub struct SignRequest<'a> {
    /// `GET`, `POST`, ...
    pub method: &'a str,
    /// The full URL, already percent-encoded as it is sent.
    pub url: &'a str,
    /// Headers to sign besides `host` (which comes from the URL) and the `x-amz-*` ones the
    /// signer adds.
    pub headers: &'a [(&'a str, &'a str)],
    /// The body.
    pub body: &'a [u8],
}

/// Signs `request` with SigV4 for `service` in `region` at `time`, with the SDK's default
/// settings (headers, double-encoded canonical path as every service but S3 expects), and
/// returns the headers to add.
pub fn sigv4_headers(
    keys: &AwsKeys,
    request: &SignRequest<'_>,
    region: &str,
    service: &str,
    time: SystemTime,
) -> Result<Vec<(String, String)>, ProviderError> {
    let failed = |what: &str, e: &dyn fmt::Display| {
        ProviderError::new(
            ErrorClass::BadRequest,
            format!("the request cannot be signed ({what}: {e})"),
        )
    };
    let identity: Identity = Credentials::new(
        keys.access_key_id.expose(),
        keys.secret_access_key.expose(),
        keys.session_token.as_ref().map(|t| t.expose().to_owned()),
        None,
        "llmbus",
    )
    .into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(service)
        .time(time)
        .settings(SigningSettings::default())
        .build()
        .map_err(|e| failed("parameters", &e))?
        .into();
    let signable = SignableRequest::new(
        request.method,
        request.url,
        request.headers.iter().copied(),
        SignableBody::Bytes(request.body),
    )
    .map_err(|e| failed("URL", &e))?;
    let (instructions, _signature) = sign(signable, &params)
        .map_err(|e| failed("signer", &e))?
        .into_parts();
    Ok(instructions
        .headers()
        .map(|(name, value)| (name.to_owned(), value.to_owned()))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn example_keys(token: Option<&str>) -> AwsKeys {
        AwsKeys {
            access_key_id: Secret::new("AKIDEXAMPLE"),
            secret_access_key: Secret::new("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"),
            session_token: token.map(Secret::new),
        }
    }

    /// 2015-08-30T12:36:00Z, the time of AWS's SigV4 test suite.
    fn suite_time() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_440_938_160)
    }

    fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
        headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// AWS's published `get-vanilla` case of the SigV4 test suite.
    #[test]
    fn get_vanilla_matches_the_aws_test_suite() {
        let request = SignRequest {
            method: "GET",
            url: "https://example.amazonaws.com/",
            headers: &[],
            body: b"",
        };
        let headers = sigv4_headers(
            &example_keys(None),
            &request,
            "us-east-1",
            "service",
            suite_time(),
        )
        .unwrap();
        assert_eq!(header(&headers, "x-amz-date"), Some("20150830T123600Z"));
        assert_eq!(
            header(&headers, "authorization"),
            Some(
                "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, \
                 SignedHeaders=host;x-amz-date, \
                 Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
            )
        );
    }

    #[test]
    fn session_tokens_are_sent_and_signed() {
        let request = SignRequest {
            method: "POST",
            url: "https://bedrock-runtime.us-west-2.amazonaws.com/model/m%3A0/converse",
            headers: &[("content-type", "application/json")],
            body: b"{}",
        };
        let headers = sigv4_headers(
            &example_keys(Some("TOKEN")),
            &request,
            "us-west-2",
            SERVICE,
            suite_time(),
        )
        .unwrap();
        assert_eq!(header(&headers, "x-amz-security-token"), Some("TOKEN"));
        let auth = header(&headers, "authorization").unwrap();
        assert!(
            auth.starts_with(
                "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-west-2/bedrock/aws4_request, \
                 SignedHeaders=content-type;host;x-amz-date;x-amz-security-token, Signature="
            ),
            "{auth}"
        );
    }

    #[test]
    fn debug_never_prints_secrets() {
        let auth = AwsAuth::Keys(example_keys(Some("TOKEN")));
        let debug = format!("{auth:?}");
        assert!(
            !debug.contains("AKID") && !debug.contains("TOKEN"),
            "{debug}"
        );
        assert_eq!(auth.secrets().len(), 3);
    }
}
