//! GET of one object.

use hyper::Response;

use super::{Body, Target, read_response, to_output};
use crate::api::Api;
use crate::status::ApiError;

pub async fn get(api: &Api, target: &Target) -> Result<Response<Body>, ApiError> {
    let stored = api
        .storage
        .get(&target.key())
        .await?
        .ok_or_else(|| target.not_found())?;
    let obj = crate::convert::to_served_form(&target.info, to_output(&stored)?);
    Ok(read_response(target, obj))
}
