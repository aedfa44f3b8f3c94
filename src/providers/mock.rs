//! TODO (helper): mock_response deployments.
use super::*;
use crate::providers::ProviderError;
/// Answers with a fixed text.
#[derive(Debug)]
pub struct MockProvider { text: String }
impl MockProvider { /// New. 
pub fn new(text: String) -> Self { Self { text } } }
impl Provider for MockProvider {
    fn complete<'a>(&'a self, _r: &'a ChatCompletionRequest, _c: &'a CallContext) -> BoxFuture<'a, Result<ChatCompletionResponse, ProviderError>> { let _ = &self.text; todo!() }
    fn stream<'a>(&'a self, _r: &'a ChatCompletionRequest, _c: &'a CallContext) -> BoxFuture<'a, Result<ChunkStream, ProviderError>> { todo!() }
}
